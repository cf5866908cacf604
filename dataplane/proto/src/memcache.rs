//! memcached text and meta protocol framing.
