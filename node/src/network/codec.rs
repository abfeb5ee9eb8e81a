//! The request-response wire framing: a u64 little-endian length, then that many bytes. The length
//! is checked against the node's maximum before anything is allocated; the bytes themselves are a
//! `fedmesh-protocol` frame, decoded and verified off the event loop.

use fedmesh_protocol::codec::check_frame_length;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use std::io;

/// The request-response protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fedmesh/req/1");

/// Length-prefixed frames of at most `max_bytes`.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_bytes: u64,
}

impl FrameCodec {
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
    }

    async fn read_frame<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Vec<u8>> {
        let mut prefix = [0u8; 8];
        io.read_exact(&mut prefix).await?;
        let length = check_frame_length(u64::from_le_bytes(prefix), self.max_bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let mut bytes = vec![0u8; length];
        io.read_exact(&mut bytes).await?;
        Ok(bytes)
    }

    async fn write_frame<T: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut T,
        bytes: &[u8],
    ) -> io::Result<()> {
        let length = bytes.len() as u64;
        check_frame_length(length, self.max_bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        io.write_all(&length.to_le_bytes()).await?;
        io.write_all(bytes).await?;
        io.flush().await?;
        io.close().await
    }
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frames_round_trip() {
        let codec = FrameCodec::new(1024);
        let mut buffer = Cursor::new(Vec::new());
        codec.write_frame(&mut buffer, b"hello").await.unwrap();
        let mut reader = Cursor::new(buffer.into_inner());
        assert_eq!(codec.read_frame(&mut reader).await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_allocating() {
        let codec = FrameCodec::new(1024);
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"tiny");
        let error = codec.read_frame(&mut Cursor::new(bytes)).await.unwrap_err();
        assert!(error.to_string().contains("exceeds the limit"), "{error}");
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error() {
        let codec = FrameCodec::new(1024);
        let mut bytes = 10u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(codec.read_frame(&mut Cursor::new(bytes)).await.is_err());
    }
}
