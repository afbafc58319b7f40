"""The network: the paper's model, its layers, reparameterisation maths, the variant table, the model factory and weight
files.
"""
