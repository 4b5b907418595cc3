"""Other systems' APIs over embps, so that their users bring their code with one changed import:
embps.compat.bagpipe is Bagpipe's trainer API (init_cache, next_batch, get_emb); bagpipe_flags maps
Bagpipe's command lines onto ours (docs/bagpipe.md)."""
