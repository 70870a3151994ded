"""invemb.index"""
