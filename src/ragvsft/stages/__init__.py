"""The pipeline's stages, one module each, in the order run.py calls them:

    embedder  tune the sentence embedder on train questions (optional)   embedder/
    index     chunk, embed and index the documents                       index/
    finetune  the closed-book LoRA adapter and its learning curve        adapter/, finetune_set.jsonl
    reader    the cross-fitted RAFT readers and their heads              reader/, reader_set.jsonl
    probe     every arm's answers, one cached stage per arm              predictions.jsonl, development.jsonl
    score     every figure of results.json, the gate's declines (never cached)
    update    the knowledge-update experiment (optional)                 update/

Each computes its key from exactly what it reads and hands its body to `cache.Run.stage`, the one place that
reuses, replaces and records a stage's outputs."""
