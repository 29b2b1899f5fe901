"""The discount service: rules, quota, policy and the worker."""
