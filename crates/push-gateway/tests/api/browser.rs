// browser test: next
