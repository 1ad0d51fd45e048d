package server

import (
	"math/bits"
	"sync"
)

// bufferPool is a tiered pool of byte buffers for the gRPC transport and for the
// access-log messages it assembles. Unlike grpc-go's default pool, it does not clear
// buffers on reuse: the transport and CopyTo overwrite every byte they hand out, and
// clearing was a quarter of the report path's CPU.
type bufferPool struct {
	tiers [maxTier - minTier + 1]sync.Pool
}

const (
	minTier = 8  // 256 B
	maxTier = 22 // 4 MiB; larger buffers are allocated and not kept
)

func tierOf(n int) int {
	if n <= 1<<minTier {
		return 0
	}
	return bits.Len(uint(n-1)) - minTier
}

// Get implements mem.BufferPool.
func (p *bufferPool) Get(n int) *[]byte {
	t := tierOf(n)
	if t >= len(p.tiers) {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.tiers[t].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<(t+minTier))
	return &b
}

// Put implements mem.BufferPool.
func (p *bufferPool) Put(b *[]byte) {
	c := cap(*b)
	t := tierOf(c)
	if t >= len(p.tiers) || c != 1<<(t+minTier) {
		return // not one of ours, or shrunk: let the collector have it
	}
	p.tiers[t].Put(b)
}
