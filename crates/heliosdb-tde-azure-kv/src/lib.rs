//! Azure Key Vault / Managed HSM MEK provider for HeliosDB TDE (under construction).
