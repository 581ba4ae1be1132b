"""datagen"""
