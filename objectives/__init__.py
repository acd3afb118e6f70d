"""One file per pretraining objective; importing this package registers them all."""
from objectives import (alip, bart, cae, causal_lm, clip, codet5, contrabert,  # noqa: F401
                        contrastive, cropmae, decoder_span_corruption, dino, distill_mlm,
                        drbert, e2s2, encoder_decoder_prefix_lm, ernie3,
                        forecast, ftp, graphcodebert, m3ae, mae, mae_distill,
                        minilm, mlm, multi_token, next_block, prefix_lm,
                        retromae, span_corruption, starbucks, unixcoder)
