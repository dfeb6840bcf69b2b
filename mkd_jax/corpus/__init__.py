"""The offline speech corpus: TTS engines and voices, sentences, augmentation, Debian package
unpacking, real recordings, and the builder (`python -m mkd_jax.corpus.synth`). Training reads
what it builds through `mkd_jax.data`; nothing here runs during training."""
