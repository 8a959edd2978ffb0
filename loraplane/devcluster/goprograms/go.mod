module loraplane.local/goprograms

go 1.22
