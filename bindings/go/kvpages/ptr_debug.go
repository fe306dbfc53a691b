//go:build debug

package kvpages

// #include <kvpages.h>
import "C"

import "runtime"

// With -tags debug every handle access forces a garbage collection, so a missing KeepAlive
// (a finalizer closing a handle that is still in use) shows up in the tests.
func (c *Cache) ptr() *C.kvp_cache {
	runtime.GC()
	return c.p
}

func (m *Metadata) ptr() *C.kvp_metadata {
	runtime.GC()
	return m.p
}

func (p *Pool) ptr() *C.kvp_pool {
	runtime.GC()
	return p.p
}

func (s *Store) ptr() *C.kvp_store {
	runtime.GC()
	return s.p
}
