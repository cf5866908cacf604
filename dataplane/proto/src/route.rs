//! Key placement: twemproxy hash functions, distributions, hashtags.
