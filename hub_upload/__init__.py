"""hub_upload"""
