"""The CCKM OCI key list filters a selector may use (CONTRACT 4.1), in one place for the
request validation and the client. Imports nothing, so validation stays cheap to load."""

SELECTOR_FILTERS = frozenset(
    {
        "vault_id",
        "cckm_vault_id",
        "vault_name",
        "tenancy",
        "region",
        "compartment_name",
        "lifecycle_state",
        "key_name",
        "algorithm",
        "protection_mode",
        "key_material_origin",
    }
)
