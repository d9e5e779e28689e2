"""dae: Ray-native training and large-scale inference of convolutional denoising autoencoders."""

__version__ = "0.1.0"
