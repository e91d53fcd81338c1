"""keras_gr.layers: Keras layers.

`Laurel`, `LaurelStack` and `ColumnOrthogonal` (LAuReL, arXiv 2411.07501),
`LoopedBlock` (arXiv 2502.17416), `LinearAttention` (arXiv 2410.21698) and
`LatentCRF` (arXiv 2412.18596). Each is registered serializable under the
package `keras_gr`. See ARCHITECTURE.md for where this sits.
"""

from keras_gr.layers.column_orthogonal import ColumnOrthogonal
from keras_gr.layers.latent_crf import LatentCRF
from keras_gr.layers.laurel import Laurel
from keras_gr.layers.laurel_stack import LaurelStack
from keras_gr.layers.linear_attention import LinearAttention
from keras_gr.layers.looped_block import LoopedBlock

__all__ = [
    "LatentCRF",
    "ColumnOrthogonal",
    "Laurel",
    "LaurelStack",
    "LinearAttention",
    "LoopedBlock",
]
