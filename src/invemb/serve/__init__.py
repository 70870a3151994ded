"""invemb.serve"""
