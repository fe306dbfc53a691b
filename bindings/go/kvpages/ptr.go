//go:build !debug

package kvpages

// #include <kvpages.h>
import "C"

func (c *Cache) ptr() *C.kvp_cache       { return c.p }
func (m *Metadata) ptr() *C.kvp_metadata { return m.p }
func (p *Pool) ptr() *C.kvp_pool         { return p.p }
func (s *Store) ptr() *C.kvp_store       { return s.p }
