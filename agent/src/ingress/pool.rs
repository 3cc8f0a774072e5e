//! Kept-alive HTTP/1.1 connections to endpoints, for the ingress. A connection goes back to
//! its endpoint's idle list when the response it carried has been read to the end (the
//! [`PooledBody`] sees to that); one dropped earlier, or closed by the endpoint, is not
//! reused.
use crate::mesh::table::{InFlight, Target};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Idle connections kept per endpoint; more are closed when their response ends.
const MAX_IDLE: usize = 64;

pub type Sender = SendRequest<super::ReqBody>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Target, Vec<Sender>>>,
}

impl Pool {
    /// An idle connection to `t` that is still open.
    pub fn take(&self, t: &Target) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(t)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, t: Target, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(t).or_default();
        if list.len() < MAX_IDLE {
            list.push(s);
        }
    }

    /// Closes the idle connections to endpoints no longer in `keep`.
    pub fn retain(&self, keep: impl Fn(&Target) -> bool) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|t, _| keep(t));
    }
}

/// An endpoint's response body that hands its connection back to the pool at its end, and
/// counts as a request in flight to the endpoint until it is dropped.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, Target, Sender)>,
    _in_flight: InFlight,
}

impl PooledBody {
    pub fn new(
        inner: Incoming,
        pool: Arc<Pool>,
        t: Target,
        s: Sender,
        in_flight: InFlight,
    ) -> PooledBody {
        let mut body = PooledBody {
            inner,
            back: Some((pool, t, s)),
            _in_flight: in_flight,
        };
        // An empty body (a 204, a HEAD's answer) may never be polled.
        body.check_in_at_end();
        body
    }

    fn check_in_at_end(&mut self) {
        if self.inner.is_end_stream()
            && let Some((pool, t, s)) = self.back.take()
        {
            pool.put(t, s);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => {
                if let Some((pool, t, s)) = this.back.take() {
                    pool.put(t, s);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.check_in_at_end(),
            // A broken body leaves its connection unusable.
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
