package server

import "testing"

func TestBufferPool(t *testing.T) {
	var p bufferPool
	for _, n := range []int{0, 1, 256, 257, 16 << 10, 1<<20 + 1, 4 << 20, 5 << 20} {
		b := p.Get(n)
		if len(*b) != n {
			t.Errorf("Get(%d) has length %d", n, len(*b))
		}
		if n <= 4<<20 && cap(*b)&(cap(*b)-1) != 0 {
			t.Errorf("Get(%d) capacity %d is not a tier size", n, cap(*b))
		}
		p.Put(b)
	}
	b := p.Get(1000)
	(*b)[0] = 42
	p.Put(b)
	if c := p.Get(700); cap(*c) != 1024 {
		t.Errorf("a 700-byte Get took capacity %d, want the 1 KiB tier", cap(*c))
	}
}
