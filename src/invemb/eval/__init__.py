"""invemb.eval"""
