"""invemb.tiered"""
