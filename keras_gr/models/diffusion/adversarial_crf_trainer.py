"""The training-only model of the LatentCRF's optional latent adversarial
loss: the CRF and a latent discriminator updated in one step.

The LatentCRF paper (Ranasinghe et al., arXiv 2412.18596) names "a
latent-space adversarial loss" without details; the losses and the
simultaneous updates here are our reconstruction (see the class
docstring).
"""

import keras
from keras import ops


class AdversarialCRFTrainer(keras.Model):
    """Training-only model: the CRF (generator) and a latent discriminator
    updated in the same step, each by its own loss.

    Called on the CRF's inputs `[x, one-hot class(, t)]` with the target
    latents `y` (the full sampler's final latents) as the label:

    - CRF loss: `mean((crf(x) - y)^2) + w * softplus(-D(crf(x)))`
      (non-saturating GAN loss), with the discriminator's weights held
      constant (`stateless_call` on `stop_gradient` copies);
    - discriminator loss: `softplus(-D(y)) + softplus(D(sg(crf(x))))`
      (the CRF output enters through `stop_gradient`).

    Their sum is the loss `fit` differentiates: each set of weights gets
    exactly its own player's gradient, so one Adam over both equals two
    Adams with the same hyperparameters (Adam is per parameter), and the
    updates are simultaneous. Only `compute_loss` is overridden: the same
    code runs under JAX and TensorFlow, with `fit`'s callbacks. It logs
    `mse`, `adversarial` (the CRF's GAN term, unweighted) and
    `discriminator`.
    """

    def __init__(self, crf_model, discriminator, adversarial_weight, **kw):
        kw.setdefault("name", "adversarial_crf_trainer")
        super().__init__(**kw)
        self.crf_model = crf_model
        self.discriminator = discriminator
        self.adversarial_weight = float(adversarial_weight)
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self.adversarial_tracker = keras.metrics.Mean(name="adversarial")
        self.discriminator_tracker = keras.metrics.Mean(name="discriminator")

    def call(self, inputs, training=False):
        return self.crf_model(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        onehot = x[1]
        y = ops.cast(y, "float32")
        fake = ops.cast(y_pred, "float32")
        mse = ops.mean(ops.square(fake - y))
        frozen = [
            ops.stop_gradient(v) for v in self.discriminator.trainable_variables
        ]
        fake_logit, _ = self.discriminator.stateless_call(
            frozen,
            [v.value for v in self.discriminator.non_trainable_variables],
            [fake, onehot],
        )
        adversarial = ops.mean(ops.softplus(-fake_logit))
        real_logit = self.discriminator([y, onehot])
        detached = self.discriminator([ops.stop_gradient(fake), onehot])
        disc = ops.mean(ops.softplus(-real_logit)) + ops.mean(
            ops.softplus(detached)
        )
        self.mse_tracker.update_state(mse)
        self.adversarial_tracker.update_state(adversarial)
        self.discriminator_tracker.update_state(disc)
        return mse + self.adversarial_weight * adversarial + disc
