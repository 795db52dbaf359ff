//! Translating a `v1.Pod` into CRI sandbox and container configs, as kubelet does.
