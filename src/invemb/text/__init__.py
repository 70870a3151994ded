"""Text sources, corpus, unit vocabulary, WordNet lexicon and noise."""

# The version of the corpus, vocabulary and lexicon rules (normalisation, deduplication,
# tokenisation, categories, lexicon pairs). It is part of the built-data cache keys, so data built
# under older rules is not reused. 2: invisible characters removed, duplicates up to case and outer
# punctuation, upper-case clitics, numbers joined to hyphenated words, a lone capital as a name,
# pairs that are both synonyms and antonyms kept as antonyms only. 3: whitespace controls (vertical
# tab, NEL) separate words instead of being deleted; "CAN'T" -> "ca n't"; stop words stripped from
# both ends of a name ("Mary and I" -> "Mary"); long user documents split at line breaks; the
# cache keys hold the size and time of user files; a sign or currency before a digit is not outer
# punctuation to deduplication ("-5 degrees" is not "5 degrees."); corpus rows keep their place in
# their document ("part": a WordNet gloss is 0). 4: a sentence with U+FFFD (a character lost in
# decoding, 51 nlp-corpus sentences) is dropped; it had made "\ufffd" a vocabulary unit.
RULES_VERSION = 4
