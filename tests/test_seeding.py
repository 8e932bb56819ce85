"""The suite's one seed (conftest): each test starts from the same random state, whatever ran
before it in the same process."""
import numpy as np


def _draws():
    import keras
    import tensorflow as tf

    init = keras.initializers.GlorotUniform()
    return (np.random.rand(3), tf.random.uniform((3,)).numpy(), np.asarray(init((2, 2))))


def _reference():
    import keras

    keras.utils.set_random_seed(0)
    return _draws()


def test_a_test_that_consumes_random_numbers():
    np.random.rand(100)
    first = _draws()
    assert not np.allclose(first[0], _draws()[0])  # the state moves on within a test


def test_the_next_test_starts_from_the_seed_again():
    got = _draws()
    want = _reference()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
