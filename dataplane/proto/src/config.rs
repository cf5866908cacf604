//! Configuration: ferrox TOML and twemproxy `nutcracker.yml`.
