"""invemb.inversion"""
