require ["fileinto"];
if size :over 393 { fileinto "Over393"; }
if size :over 394 { fileinto "Over394"; }
if size :under 395 { fileinto "Under395"; }
if size :under 394 { fileinto "Under394"; }
if size :over 1M { fileinto "OverMega"; }
