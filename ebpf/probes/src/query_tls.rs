//! OpenSSL reads on `PostgreSQL` connections: the plaintext a read returns
//! goes through the same wire parser as a plaintext `recvfrom`. One uprobe
//! at the read's entry (on an emulated instruction: one trap) and its
//! uretprobe (the `uretprobe` syscall, no trap) per read; writes need no
//! probe for libpq clients (`PQsend*` gives the text and the start, the
//! `sendto` inside `SSL_write` the socket).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use qprof_common::{
    counters::Counter,
    query_pq::FdKey,
    query_tls::{
        FD_FLAG_TLS_UNFOLLOWED, FD_UNKNOWN, TLS_FDS_CAPACITY, TLS_READS_CAPACITY, TlsKey, TlsRead,
    },
};

use crate::{counters::bump, query_pq::PQ_FDS, query_pq_wire};

#[map(name = "PQ_TLS_READS")]
static PQ_TLS_READS: HashMap<u32, TlsRead> = HashMap::with_max_entries(TLS_READS_CAPACITY, 0);

#[map(name = "PQ_TLS_FDS")]
static PQ_TLS_FDS: LruHashMap<TlsKey, u32> = LruHashMap::with_max_entries(TLS_FDS_CAPACITY, 0);

/// Entry of a read: `(ssl, buf, num[, readbytes])`. `readbytes` is false
/// for `SSL_read`, whose return value is the byte count.
#[inline(always)]
pub fn on_read(ctx: &ProbeContext, readbytes: bool) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let read = TlsRead {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        readbytes: if readbytes {
            ctx.arg(3).unwrap_or(0)
        } else {
            0
        },
        fd: FD_UNKNOWN,
        pad: 0,
    };
    if PQ_TLS_READS.insert(tid, read, 0).is_err() {
        bump(Counter::QueryTlsMapFull);
    }
}

/// A `recvfrom` on `fd` by thread `tid`: when the thread is inside an
/// OpenSSL read, notes the socket and returns true (the bytes are
/// ciphertext: the caller must not parse them).
#[inline(always)]
pub fn inside_read(tid: u32, fd: u32) -> bool {
    match PQ_TLS_READS.get_ptr_mut(tid) {
        Some(read) => {
            // SAFETY: this thread's entry; only this thread writes it.
            unsafe { (*read).fd = fd };
            true
        }
        None => false,
    }
}

/// Return of a read: parses the plaintext on its connection.
#[inline(always)]
pub fn on_read_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: copied out at once.
    let Some(read) = (unsafe { PQ_TLS_READS.get(tid) }).copied() else {
        return;
    };
    let _ = PQ_TLS_READS.remove(tid);
    // `int` in both ABIs: the low 32 bits, sign-extended.
    let ret = i64::from(ctx.ret::<u64>() as u32 as i32);
    if ret <= 0 || read.buf == 0 {
        return;
    }
    let n = if read.readbytes == 0 {
        ret as u64
    } else {
        // SAFETY: user memory through the checked helper.
        unsafe { bpf_probe_read_user(read.readbytes as *const u64) }.unwrap_or(0)
    };
    let pid = (pid_tgid >> 32) as u32;
    let key = TlsKey {
        ssl: read.ssl,
        pid,
        pad: 0,
    };
    let fd = if read.fd == FD_UNKNOWN {
        // SAFETY: copied out at once.
        match unsafe { PQ_TLS_FDS.get(&key) }.copied() {
            Some(fd) => fd,
            None => {
                // Counted only when the bytes look like a server's reply:
                // other TLS clients of the host are none of our business.
                if looks_like_backend(read.buf as *const u8) {
                    bump(Counter::QueryTlsFdUnknown);
                }
                return;
            }
        }
    } else {
        let _ = PQ_TLS_FDS.insert(&key, read.fd, 0);
        read.fd
    };
    let Some(conn) = PQ_FDS.get_ptr_mut(&FdKey { pid, fd }) else {
        return;
    };
    // SAFETY: the connection's entry (see `query_pq::on_sendto`).
    let conn = unsafe { &mut *conn };
    if conn.flags & FD_FLAG_TLS_UNFOLLOWED != 0 {
        // Its libssl was attached after the connection's first reply (a
        // copy found by a rescan): follow it from its next ReadyForQuery.
        conn.flags &= !FD_FLAG_TLS_UNFOLLOWED;
        conn.lost = 1;
        conn.skip = 0;
    }
    query_pq_wire::parse(conn, read.buf as *const u8, n, pid_tgid);
}

/// Whether `buf` starts like a `PostgreSQL` server message (a type byte
/// the server sends, then a length under 16 MiB).
#[inline(always)]
fn looks_like_backend(buf: *const u8) -> bool {
    // SAFETY: user memory through the checked helper.
    let Ok(head) = (unsafe { bpf_probe_read_user(buf.cast::<[u8; 2]>()) }) else {
        return false;
    };
    matches!(
        head[0],
        b'Z' | b'D' | b'T' | b'C' | b'E' | b'1' | b'2' | b'n' | b's'
    ) && head[1] == 0
}

/// Whether a receive on a followed plaintext connection starts with a TLS
/// record header (handshake, alert or application data, version 3.x):
/// the client encrypts through a TLS library qprof does not probe. No
/// `PostgreSQL` message type is below 0x20, so this cannot be a reply.
#[inline(always)]
pub fn is_tls_record(buf: *const u8) -> bool {
    // SAFETY: user memory through the checked helper.
    let Ok(head) = (unsafe { bpf_probe_read_user(buf.cast::<[u8; 2]>()) }) else {
        return false;
    };
    matches!(head[0], 0x15..=0x17) && head[1] == 3
}
