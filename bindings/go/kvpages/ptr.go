//go:build !debug

package kvpages

// #include <kvpages.h>
import "C"

func (c *Cache) ptr() *C.kvp_cache       { return c.p }
func (m *Metadata) ptr() *C.kvp_metadata { return m.p }
