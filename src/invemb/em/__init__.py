"""invemb.em"""
