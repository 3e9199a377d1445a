//! A Kubernetes-API-compatible test cluster for sluice end-to-end tests.
