# The Vault / OpenBao policy heliosdb-tde-vault needs, with the default mounts (`transit`,
# KV v2 at `secret`) and state path (`heliosdb/meks`). With `key_prefix = "heliosdb-"`, replace
# the `+` key segments below by `heliosdb-*`-style names to confine the token to those keys.
# docs/providers/vault.md explains each line; `cargo xtask test` provisions its test token with
# exactly this file.

# --- What a running database needs ---------------------------------------------------------
# Wrap a TEK (Transit encrypt with the TEK's derivation context).
path "transit/encrypt/+" {
  capabilities = ["update"]
}
# Unwrap a TEK.
path "transit/decrypt/+" {
  capabilities = ["update"]
}
# Read a key's versions and properties (derived, exportable, min_decryption_version); create
# the key of a new MEK (generate_mek on a first start).
path "transit/keys/+" {
  capabilities = ["read", "create", "update"]
}
# Read and write the MEK lifecycle records (KV v2, check-and-set).
path "secret/data/heliosdb/*" {
  capabilities = ["read", "create", "update"]
}
# List the MEKs that have records.
path "secret/metadata/heliosdb/*" {
  capabilities = ["read", "list"]
}

# --- What MEK rotation needs ---------------------------------------------------------------
# Create the next key version.
path "transit/keys/+/rotate" {
  capabilities = ["update"]
}
# Raise min_decryption_version / min_encryption_version as versions are deactivated.
path "transit/keys/+/config" {
  capabilities = ["update"]
}
# Re-wrap TEKs on the server, so that no TEK leaves Vault during a rotation.
path "transit/rewrap/+" {
  capabilities = ["update"]
}

# --- Start-up checks and token upkeep -------------------------------------------------------
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}
path "sys/internal/ui/mounts/*" {
  capabilities = ["read"]
}
