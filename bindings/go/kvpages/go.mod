module kvpages.dev/go/kvpages

go 1.19
