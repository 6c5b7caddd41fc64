"""``mobizo-export``: Hugging Face checkpoint (or the starter preset) → model bundle.

Modules, in the order an export uses them:

- ``families``: the table of supported families (llama, qwen2) and config → ModelShape;
- ``starter``: the built-in starter checkpoint (random Llama, byte tokenizer);
- ``checkpoint``: checks a checkpoint directory and loads it with transformers' own classes;
- ``options``: the validated export options;
- ``lora_init``: the frozen LoRA-A (Kaiming-uniform, seeded) and its hash;
- ``layers``: the export-friendly building blocks (RMSNorm, RoPE, attention, MP-LoRA linear);
- ``model``: the decoder and its program bodies: MP-LoRA (train) and a KV cache (infer);
- ``programs``: the methods of each program, built from one decoder;
- ``lower``: torch.export + ExecuTorch lowering, one static method per shape, the weights
  tagged out into a data file;
- ``weights_file``: merges the programs' data files into the bundle's one ``weights.ptd``;
- ``bundle_writer``: adapter (PEFT), tokenizer and manifest files;
- ``probe``: the probe batches, and the check of every method against transformers;
- ``export``: the pipeline (validate → lower into a temp dir → probe against eager → rename);
- ``reference``: eager references (transformers with merged LoRA; the decoder run eagerly);
- ``cli``: the ``mobizo-export`` command.

Inference program design (ExecuTorch 1.5.1, measured here):

- The KV cache is a set of mutable buffers, one k and one v per layer, shaped
  [1, max_context, kv_heads, head_dim]. The program is emitted with
  ``MemoryPlanningPass(share_mutable_buffers=True)``, so ``prefill`` (a fixed chunk of
  tokens) and ``decode`` (one token) read and write the SAME cache; a test generates a
  prompt with prefill then decodes and compares with transformers' ``generate``.
- Cache writes are ``index_copy_`` at ``start_pos + arange(chunk)`` (lowered to
  ``index_put_``, a portable kernel outside the delegate, rewritten in place by ExecuTorch's
  reinplace pass: functionalized, each write was a copy of the whole cache alive until the
  program's end); attention reads the whole fixed-size
  cache with a ``j <= position`` mask built without slicing, so shapes stay static and the
  projections, matmuls and MLPs stay delegated to XNNPACK.
- The LLM custom ops (``llama::sdpa_with_kv_cache``, ``llama::update_cache``) are not
  registered in the pip runtime's operator registry (only their AOT library ships), so a
  program using them would not load through ``executorch.runtime``; not used.
- KV cache as explicit inputs/outputs would copy the whole cache in and out on every token;
  not needed since shared mutable buffers work.
- LoRA-B is a runtime input ([1, P]) of both methods: switching adapters is just passing
  another row, no reload.
"""
