"""Text sources, corpus, unit vocabulary, WordNet lexicon and noise."""
