"""Templates, sources, vocabularies, mixtures and feature conversion (no models, no training)."""

import tensorflow as tf

# tf.data runs on the host. Left alone, TensorFlow would also claim every GPU's memory
# and starve JAX, so it is shown none.
tf.config.set_visible_devices([], "GPU")
