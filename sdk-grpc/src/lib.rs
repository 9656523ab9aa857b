//! prodbox for gRPC (tonic): server layer, client interceptor and layer.
//!
//! Not implemented yet: this crate is a placeholder in the workspace until its issue
//! ("gRPC: tonic server layer, client interceptor and layer, streaming") is done. It will reuse
//! `prodbox_core::Ingress` and the one codec, as `prodbox-http` does.
