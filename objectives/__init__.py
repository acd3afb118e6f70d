"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, cae, causal_lm, codet5, contrabert, contrastive,  # noqa: F401
                        cropmae, decoder_span_corruption, dino, distill_mlm,
                        drbert, e2s2, encoder_decoder_prefix_lm, ernie3,
                        forecast, ftp, graphcodebert, mae, mae_distill,
                        minilm, mlm, multi_token, multimae, next_block,
                        prefix_lm, retromae, span_corruption, spark, starbucks,
                        unixcoder)
