"""One file per pretraining objective; importing this package registers them all."""
from objectives import (  # noqa: F401
                        alip, bart, cae, causal_lm, classify, clip, codet5, contrabert, contrastive,
                        cropmae, decoder_span_corruption, dino, distill_mlm, drbert, e2s2,
                        encoder_decoder_prefix_lm, ernie3, forecast, frame_prediction, ftp, gmml,
                        graphcodebert, i2p_mae, look, m3ae, mae, mae_distill, minilm, mlm,
                        multi_token, multimae, next_block, position_prediction, prefix_lm, retromae,
                        span_corruption, spark, ssast, ssld, starbucks, tera, token_unify,
                        unixcoder, videomae, vitok)
