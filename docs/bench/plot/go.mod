module github.com/oauthproxy/oauthproxy/docs/bench/plot

go 1.26.8

require golang.org/x/image v0.48.0
