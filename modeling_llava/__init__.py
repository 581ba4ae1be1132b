"""modeling_llava"""
