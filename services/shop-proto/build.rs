//! Generates the ProductService client and server with `protoc` (Debian's
//! `protobuf-compiler`; `PROTOC` may point elsewhere).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_protos(&["proto/product/v1/product.proto"], &["proto"])
}
