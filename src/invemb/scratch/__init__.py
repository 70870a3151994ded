"""invemb.scratch"""
