"""Weights from other libraries into Flax variables: `torchvision.convert(state_dict, model)`."""
