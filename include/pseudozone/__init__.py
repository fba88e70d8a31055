"""pseudozone: pseudonymization and data-subject rights for a multi-tenant lake."""
