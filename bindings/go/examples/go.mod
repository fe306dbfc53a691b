module kvpages.dev/go/examples

go 1.19

require kvpages.dev/go/kvpages v0.0.0-00010101000000-000000000000

replace kvpages.dev/go/kvpages => ../kvpages
