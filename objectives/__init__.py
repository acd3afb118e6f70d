"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, cae, causal_lm, classify, codet5, contrabert,  # noqa: F401
                        contrastive, cropmae, decoder_span_corruption, dino, distill_mlm,
                        drbert, e2s2, encoder_decoder_prefix_lm, ernie3,
                        forecast, ftp, graphcodebert, look, mae, mae_distill,
                        minilm, mlm, multi_token, next_block, prefix_lm,
                        retromae, span_corruption, ssld, starbucks, unixcoder)
